"""The Media Streams bridge: Twilio's WebSocket ⇄ a tenant runtime's, over protocol/media.py.

relay.py pumps frames both ways (unchanged, in order, back-pressured); streams.py knows every
open stream of the app (metrics, shutdown). The upgrade's checks and the stream's bookkeeping
(admission, lease, cost) are handlers/stream.py's.
"""
