"""The event schema (`schema`: one msgspec tagged union, the only thing ever written to the
log) and its codec (`codec`: bytes to events, older versions upgraded). Everything is
imported from here: `from ultra import events as ev`."""

from ultra.events.codec import *  # noqa: F403
from ultra.events.codec import __all__ as _codec_all
from ultra.events.schema import *  # noqa: F403
from ultra.events.schema import _Event, _TestEvent  # noqa: F401  (the shared bases)
from ultra.events.schema import __all__ as _schema_all

__all__ = [*_schema_all, *_codec_all]
