"""Pure compute: decode, pre-process, run SavedModels, post-process. No sockets, no database."""
