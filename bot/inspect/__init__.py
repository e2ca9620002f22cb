"""``bot inspect``: reading a stored recording back, its report and its timeline picture.

A tool beside the product's flow: may import ``bot.manifest``, ``bot.media.layout`` and
``bot.storage`` (the MP4 box walker); nothing in the recorder imports it.
"""
