"""End-to-end runs (one file per setting): load, build data, Fisher, mask, SFR-on, evaluate, export."""
