"""The HTTP surface: REST API, /ws, health, metrics and the admin page."""
