"""The ios target: Core ML packages, the Swift bridge and a SwiftUI app. Read target.py first."""
