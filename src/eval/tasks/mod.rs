//! One module per benchmark: its item type, loader and scorer.

pub mod choice;
pub mod crows;
pub mod lama;
pub mod lambada;
pub mod stereoset;
pub mod wikitext;
pub mod winobias;
pub mod winogender;
pub mod winogrande;
