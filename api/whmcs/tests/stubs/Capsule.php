<?php
/**
 * Test stub of WHMCS's database facade (Laravel's query builder behind WHMCS\Database\Capsule):
 * an in-memory database with just what the nPanel module calls, which records every write.
 *
 * Supported: Capsule::table($t)->where(...)->update([...]) / ->updateOrInsert($keys, $values) /
 * ->first() / ->get(); Capsule::schema()->hasTable($t) / ->create($t, fn($table) ...);
 * Capsule::raw($sql).
 */

namespace WHMCS\Database;

/** A raw SQL fragment, as Laravel's Illuminate\Database\Query\Expression. */
class Expression
{
    private $value;

    public function __construct($value)
    {
        $this->value = $value;
    }

    public function getValue()
    {
        return $this->value;
    }

    public function __toString()
    {
        return (string) $this->value;
    }
}

/** The in-memory tables and the log of writes. */
class FakeDb
{
    /** @var array table => list of rows (arrays) */
    public static $tables = [];
    /** @var array table => column list, for tables made through the schema builder */
    public static $schemas = [];
    /** @var array list of ['table', 'op', 'where', 'values'] in order */
    public static $writes = [];

    public static function reset()
    {
        self::$tables = [];
        self::$schemas = [];
        self::$writes = [];
    }

    /** Seed a table the module expects WHMCS to have (tblhosting). */
    public static function seed($table, array $row)
    {
        self::$tables[$table][] = $row;
    }
}

class Query
{
    private $table;
    private $wheres = [];

    public function __construct($table)
    {
        $this->table = $table;
    }

    public function where($column, $op = null, $value = null)
    {
        if (func_num_args() === 2) {
            $value = $op;
            $op = '=';
        }
        if ($op !== '=') {
            throw new \LogicException("stub: where() supports '=' only, got {$op}");
        }
        $this->wheres[] = [$column, $value];
        return $this;
    }

    public function wheres()
    {
        return $this->wheres;
    }

    private function exists()
    {
        if (!array_key_exists($this->table, FakeDb::$tables)) {
            throw new \RuntimeException("stub: SQLSTATE[42S02]: Base table or view not found: table '{$this->table}' doesn't exist");
        }
    }

    private function matches(array $row)
    {
        foreach ($this->wheres as $w) {
            if (!array_key_exists($w[0], $row) || (string) $row[$w[0]] !== (string) $w[1]) {
                return false;
            }
        }
        return true;
    }

    public function update(array $values)
    {
        $this->exists();
        FakeDb::$writes[] = ['table' => $this->table, 'op' => 'update', 'where' => $this->wheres, 'values' => $values];
        $n = 0;
        foreach (FakeDb::$tables[$this->table] as $i => $row) {
            if ($this->matches($row)) {
                FakeDb::$tables[$this->table][$i] = array_merge($row, $values);
                $n++;
            }
        }
        return $n;
    }

    public function updateOrInsert(array $attributes, array $values = [])
    {
        $this->exists();
        foreach ($attributes as $k => $v) {
            $this->where($k, $v);
        }
        FakeDb::$writes[] = ['table' => $this->table, 'op' => 'updateOrInsert', 'where' => $this->wheres, 'values' => $values];
        foreach (FakeDb::$tables[$this->table] as $i => $row) {
            if ($this->matches($row)) {
                FakeDb::$tables[$this->table][$i] = array_merge($row, $values);
                return true;
            }
        }
        FakeDb::$tables[$this->table][] = array_merge($attributes, $values);
        return true;
    }

    public function get()
    {
        $this->exists();
        $out = [];
        foreach (FakeDb::$tables[$this->table] as $row) {
            if ($this->matches($row)) {
                $out[] = (object) $row;
            }
        }
        return $out;
    }

    public function first()
    {
        $rows = $this->get();
        return $rows ? $rows[0] : null;
    }
}

/** Accepts Laravel's column definitions fluently and keeps the column names. */
class Blueprint
{
    public $columns = [];

    public function __call($method, $args)
    {
        if (isset($args[0]) && is_string($args[0]) && !in_array($method, ['nullable', 'primary', 'default', 'unique', 'index'], true)) {
            $this->columns[] = $args[0];
        }
        return $this;
    }
}

class Schema
{
    public function hasTable($table)
    {
        return array_key_exists($table, FakeDb::$tables);
    }

    public function create($table, callable $define)
    {
        if ($this->hasTable($table)) {
            throw new \RuntimeException("stub: table {$table} already exists");
        }
        $b = new Blueprint();
        $define($b);
        FakeDb::$schemas[$table] = $b->columns;
        FakeDb::$tables[$table] = [];
        FakeDb::$writes[] = ['table' => $table, 'op' => 'create', 'where' => [], 'values' => $b->columns];
    }
}

class Capsule
{
    public static function table($table)
    {
        return new Query($table);
    }

    public static function schema()
    {
        return new Schema();
    }

    public static function raw($sql)
    {
        return new Expression($sql);
    }
}
