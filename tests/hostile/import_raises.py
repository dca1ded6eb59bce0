raise RuntimeError("import-time failure on purpose")
