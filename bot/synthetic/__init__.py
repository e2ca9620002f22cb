"""The synthetic participant: a publisher of a test signal a recording can be checked by.

``bot selftest`` publishes it through the real service to prove the whole path; the
testbed publishes it into the local SFU. ``signal`` is the picture and sound (barcode,
flash, beep), pure functions of time; ``participant`` publishes them like a browser app.
Imports the API client and ``bot.rtc`` only.
"""
