from twisted.application.service import ServiceMaker

rtcsignal = ServiceMaker(
    "rtcsignal",
    "twisted_signal.tap",
    "A WebRTC signaling server: peers join rooms and exchange offers, answers and candidates.",
    "rtcsignal",
)
