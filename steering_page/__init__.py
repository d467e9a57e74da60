"""The steering page behind serve.py, one job a module:

  jobs.py     a request's JSON checked into what to do (no model, no HTTP)
  session.py  the loaded model and SAE answering checked requests: completions, sweeps, the judge
  page.py     the HTML: the steering page itself, and interpret.py's pages served beside it
  server.py   HTTP: connections, limits, the Host and Origin checks, routing, errors as one line of JSON
"""
