"""The android target: ExecuTorch .pte bundles, the Kotlin bridge and a Gradle app. Read target.py first."""
