"""The long-running relay: feed reader, WebSocket hub, webhook delivery."""
