"""The demo cohort: synthetic pyramidal slides the workflow makes by itself (not part of the slide reader)."""
