//! Per-kind strategy: the resources skiff serves, their defaulting, validation, table columns and
//! status rules. Pure functions over JSON.
