"""The example agent: answers with a greeting and the versions it imported."""
import os

import requests
import structlog


def handler(context):
    structlog.get_logger().info("handled", keys=sorted(context))
    return {
        "message": f"{os.environ.get('GREETING', 'Hi')}, {context.get('name', 'world')}!",
        "requests": requests.__version__,
        "structlog": structlog.__version__,
    }
