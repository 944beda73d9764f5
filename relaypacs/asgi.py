"""ASGI entry point: HTTP to Django, WebSockets to Channels (notifications.routing).

Chunk PUTs sent with an upload token or a validly signed access token, the upload's hot
path, are served by a lean endpoint
in front of Django (uploads.chunk_endpoint), and so is the GET of the SSE event stream, a
long-held connection (notifications.sse_endpoint); every other request reaches Django
unchanged.
"""

import atexit
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

from relaypacs.malloc import KEEP_FREED_BYTES, malloc_keep_freed_memory  # noqa: E402

# Chunk buffers stay mapped from one chunk to the next (relaypacs/malloc.py).
if settings.WEB_MALLOC_TUNING:
    malloc_keep_freed_memory(largest_block=settings.UPLOAD_MAX_CHUNK_SIZE, keep=KEEP_FREED_BYTES)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from notifications.routing import websocket_urlpatterns  # noqa: E402
from notifications.sse_endpoint import SseEndpoint  # noqa: E402
from relaypacs.metrics import this_process_exits  # noqa: E402
from uploads.chunk_endpoint import ChunkEndpoint  # noqa: E402

# A web worker that stops removes its live gauges from the metrics directory (one that is
# killed is found by `serve`'s sweep instead).
atexit.register(this_process_exits)

application = ProtocolTypeRouter(
    {
        "http": SseEndpoint(fallback=ChunkEndpoint(fallback=django_asgi_app)),
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
