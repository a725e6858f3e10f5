//! sea-orm entities for the Aether tables the service reads.
