"""`ultra report`: the standard tables of results.db, in five formats.

`intervals` (Wilson intervals, the two-proportion test), `tables` (queries -> `Table`),
`formats` (terminal, Markdown, CSV, JSON) and `page` (one offline HTML page with charts).
"""
