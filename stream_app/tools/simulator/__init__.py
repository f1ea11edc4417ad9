"""The labelled traffic simulator (`stream-app simulate`)."""
