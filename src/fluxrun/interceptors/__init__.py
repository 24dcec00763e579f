"""One module per IO kind; each keeps record (and later replay) of its kind side by side."""
