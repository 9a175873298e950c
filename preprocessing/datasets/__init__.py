"""One module per dataset. Each module defines `READERS = {"name": ReaderClass, ...}`;
`preprocessing.registry` collects them all, so adding a dataset means adding one file."""
