"""Evidence that a record is what was recorded, for a third party to check later.

Hash chains over the fragments as they are written and over the audit trail, the signed
manifest, ``bot verify``, and the clinical-record resource (FHIR) stored beside the object.
May import the foundation, ``bot.manifest`` and ``bot.storage``; the recorder, the control
API and the commands use it.
"""
