//! placeholder for mediation (filled below)
