"""``bot inspect``: reading a stored recording back, its report and its timeline picture.

``scan`` decodes the file once (dark, frozen, silent, holes, the barcode), ``report``
gathers that with the manifest and the A/V offsets into the text report, and
``timeline_png`` draws it. A tool beside the product's flow: may import ``bot.manifest``,
``bot.media.layout``, ``bot.storage`` (the MP4 box walker) and ``bot.synthetic.signal``
(the barcode reader); nothing in the recorder imports it.
"""
