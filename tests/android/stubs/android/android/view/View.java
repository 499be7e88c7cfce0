// A declared API surface, not Android: the Android SDK signatures the sample app uses, written by hand
// from the public SDK reference so the generated Kotlin compiles on the JVM in edgepack's tests
// (kotlinc reads Java sources for symbols; nothing here is compiled to classes or run).
package android.view;

public class View {
    public View(android.content.Context context) {}
    public interface OnClickListener { void onClick(View v); }
    public void setOnClickListener(OnClickListener l) {}
    public void setEnabled(boolean enabled) {}
    public boolean isEnabled() { return true; }
}
