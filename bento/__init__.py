"""The BentoML service for the breast-cancer diagnosis model."""
