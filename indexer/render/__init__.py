"""Text and HTML for people: every summary line, screen and page the commands print or write.

Each function takes the data a stage returned (a summary dict, stats figures, rows) and returns
text; none of them computes a figure. Only rows.py (query output) and html.py (the report file)
call the inspect stage, to stream or write what it computed.
"""
