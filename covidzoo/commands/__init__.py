"""The built-in commands. Each module defines Click commands; `default_plugins` adds them."""
