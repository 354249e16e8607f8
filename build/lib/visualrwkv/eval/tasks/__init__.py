"""One module per benchmark: its file layout, reader, scorer glue and fixture writer (each exposes `TASK`)."""
