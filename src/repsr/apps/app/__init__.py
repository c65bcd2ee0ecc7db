"""`repsr app`: a local web page to upscale, compare and choose, on the same API as `repsr upscale`.

Modules: `choices` (which model a kind of picture and a scale pick; the shipped models), `library`
(uploads, the folders a user may name, reading a picture for a thumbnail or a preview crop),
`preview` (the live crop: a model, or bicubic, on a crop of the user's picture), `jobs` (the batch
queue: one job at a time, progress, cancel, outcomes as the CLI reports them), `server` (the HTTP
server on Python's `http.server` and the routes). `static/` holds the page (no CDN: every script and
style is served from here).
"""
