// A declared API surface, not Android: the Android SDK signatures the sample app uses, written by hand
// from the public SDK reference so the generated Kotlin compiles on the JVM in edgepack's tests
// (kotlinc reads Java sources for symbols; nothing here is compiled to classes or run).
package android.widget;

public class LinearLayout extends android.view.ViewGroup {
    public static final int HORIZONTAL = 0;
    public static final int VERTICAL = 1;
    public LinearLayout(android.content.Context context) { super(context); }
    public void setOrientation(int orientation) {}
    public int getOrientation() { return VERTICAL; }
}
