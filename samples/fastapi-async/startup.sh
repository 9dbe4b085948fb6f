#!/bin/sh
# App Service startup command (Configuration > General settings > Startup Command): either
# the gunicorn line below as it stands, or "startup.sh" to run this file. Two workers, each
# running the app in its own event loop with its own kvassert credential and token cache; the
# worker class comes from the uvicorn-worker package (uvicorn.workers is deprecated).
exec gunicorn --bind=0.0.0.0:8000 --workers 2 --worker-class uvicorn_worker.UvicornWorker app:app
