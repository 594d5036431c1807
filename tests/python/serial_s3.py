"""An S3 server for the lease tests: moto's, on 127.0.0.1, serving one
request at a time, so each conditional write's check and write happen
together (moto's threaded server checks If-Match / If-None-Match without a
lock, like s3s-fs).

    python serial_s3.py PORT [--lax]

--lax drops If-Match and If-None-Match from every request: a store that
ignores preconditions, which the coordinator must refuse. moto does not
check request signatures, so removing headers is harmless.
"""

import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def lax(app):
    def wrapped(environ, start_response):
        environ.pop("HTTP_IF_MATCH", None)
        environ.pop("HTTP_IF_NONE_MATCH", None)
        return app(environ, start_response)

    return wrapped


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    if "--lax" in sys.argv[2:]:
        app = lax(app)
    run_simple(
        "127.0.0.1",
        port,
        app,
        threaded=False,
        processes=1,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
