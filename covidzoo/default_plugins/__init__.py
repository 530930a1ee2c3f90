"""Built-in plugins: covidzoo's own components, registered through the public hooks."""
