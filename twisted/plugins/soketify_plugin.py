from twisted.application.service import ServiceMaker

soketify = ServiceMaker(
    "soketify", "soketify.tap", "Pusher Channels compatible real-time server", "soketify"
)
