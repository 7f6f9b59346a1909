"""Networks trained elsewhere: what a file is, judged by its content (sniff), and its weights read as
data, never as code (weights)."""
