"""
The example application of the seed library's guide, ported: a room that
admits at most N peers, and peers that log in with a ``credentials`` cookie.
"""
