"""Built-in backbones. Each module is imported only when one of its models is built."""
