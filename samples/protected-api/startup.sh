#!/bin/sh
# App Service startup command (Configuration > General settings > Startup Command): either
# the gunicorn line below as it stands, or "startup.sh" to run this file.
exec gunicorn --bind=0.0.0.0:8000 --workers 2 api:app
