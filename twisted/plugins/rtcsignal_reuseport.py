from twisted_signal.reuseport import ReusePortParser

reuseport = ReusePortParser()
