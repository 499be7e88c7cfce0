// A declared API surface, not Android: the Android SDK signatures the sample app uses, written by hand
// from the public SDK reference so the generated Kotlin compiles on the JVM in edgepack's tests
// (kotlinc reads Java sources for symbols; nothing here is compiled to classes or run).
package android.content.pm;

public class ApplicationInfo {
    public String nativeLibraryDir;
}
