"""The withdrawal service: wiring, HTTP edge and submission (withdrawal-specific shell)."""
