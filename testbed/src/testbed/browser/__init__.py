"""A real browser as a call participant: Chromium, driven by Playwright, publishing our
measurable test signal through the local SFU's demo page."""
