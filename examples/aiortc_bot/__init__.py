"""
A media bot that joins a room like a browser and answers its calls: see
README.md and `examples.aiortc_bot.bot`.
"""
