"""The web side's wiring: the aiohttp server Faust runs, how refusals become JSON, and which
blueprints the app serves."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from faust.web.drivers import aiohttp as faust_aiohttp

from . import openapi, page, views
from .auth import AuthError
from .internals import use_web_runner
from .kafka_io import KafkaUnavailable
from .models import Unprocessable, ValidationError
from .reads import ReadsBehind
from .peers import NotOwner, PeerUnavailable
from .ratelimit import TooManyRequests
from .views import Refused, error

if TYPE_CHECKING:
    from .app import KchatApp


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every refusal, also aiohttp's own (404, 405, 413), answers with a JSON body."""
    try:
        return await handler(request)
    except Unprocessable as exc:
        return error(422, f"{exc.field} {exc.message}", field=exc.field)
    except Refused as exc:
        return error(exc.status, exc.message)
    except ValidationError as exc:
        return error(400, exc.message, field=exc.field)
    except AuthError as exc:
        resp = error(exc.status, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="kchat"'
        return resp
    except TooManyRequests as exc:
        resp = error(429, str(exc))
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except (KafkaUnavailable, PeerUnavailable, NotOwner, ReadsBehind) as exc:
        return error(503, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.status == 413 else exc.reason
        return error(exc.status, reason or "error")


class KchatWeb(faust_aiohttp.Web):
    """Faust's aiohttp server, with two changes for long-lived event streams."""

    def __init__(self, app: "KchatApp", **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.web_app.middlewares.append(json_errors)
        # An idle event stream only notices a vanished client when it next writes; with handler
        # cancellation aiohttp cancels the handler as soon as the connection drops, so the
        # subscriber is released at once. Faust builds its runner without the option.
        use_web_runner(self, web.AppRunner(self.web_app, access_log=None, handler_cancellation=True))

        async def close_streams(_web_app: web.Application) -> None:
            # Without this, aiohttp waits up to 60 s per open event stream before it stops.
            app.hub.close_all()

        self.web_app.on_shutdown.append(close_streams)


def setup(app: "KchatApp") -> None:
    # The page first: Faust's own blueprints, applied when the server starts, also claim "/".
    for blueprint in (page.blueprint, views.blueprint, openapi.blueprint):
        blueprint.register(app)
