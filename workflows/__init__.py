"""The pure core: workflow definitions. No I/O anywhere in this package."""
