// A declared API surface, not Android: the Android SDK signatures the sample app uses, written by hand
// from the public SDK reference so the generated Kotlin compiles on the JVM in edgepack's tests
// (kotlinc reads Java sources for symbols; nothing here is compiled to classes or run).
package android.app;

public class Activity extends android.content.Context {
    protected void onCreate(android.os.Bundle savedInstanceState) {}
    protected void onDestroy() {}
    public void setContentView(android.view.View view) {}
    public final void runOnUiThread(Runnable action) {}
    public void setTitle(CharSequence title) {}
    public final CharSequence getTitle() { return null; }
    @Override public android.content.res.AssetManager getAssets() { return null; }
    @Override public java.io.File getExternalFilesDir(String type) { return null; }
    @Override public android.content.pm.ApplicationInfo getApplicationInfo() { return null; }
    @Override public java.io.File getCacheDir() { return null; }
}
