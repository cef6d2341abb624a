-- A projection's fold state and the last `seq` it folded, saved in one transaction so an
-- interrupted `ultra project` neither skips nor double-counts an event.
CREATE TABLE projection_state (
    name     TEXT    PRIMARY KEY,
    version  INTEGER NOT NULL,
    last_seq BIGINT  NOT NULL,
    state    TEXT    NOT NULL
);
