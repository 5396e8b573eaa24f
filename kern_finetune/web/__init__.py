"""What the two HTTP servers (host/, service/) share: socket, uvicorn thread, request timeouts, body limits."""
