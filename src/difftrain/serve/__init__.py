"""The generation server: FastAPI app, request schema, micro-batching engine, model watcher and
web page. Imports pipeline/ (one request, one generate function), never train/."""
