// A declared API surface, not Android: the Android SDK signatures the sample app uses, written by hand
// from the public SDK reference so the generated Kotlin compiles on the JVM in edgepack's tests
// (kotlinc reads Java sources for symbols; nothing here is compiled to classes or run).
package android.content;

public abstract class Context {
    public abstract android.content.res.AssetManager getAssets();
    public abstract java.io.File getExternalFilesDir(String type);
    public abstract android.content.pm.ApplicationInfo getApplicationInfo();
    public abstract java.io.File getCacheDir();
}
