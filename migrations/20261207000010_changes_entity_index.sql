-- The console's change feed filtered by entity (`/console/changes?entity=role`) reads the newest
-- changes of that entity below a cursor: (entity, id) serves it with a backward index scan
-- however rare the entity is (the primary key alone would walk every newer change of the
-- others). Written by the sequencer only, never on a writer's commit path.
create index changes_entity_id on changes (entity, id);
