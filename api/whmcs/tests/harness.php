<?php
/**
 * A php-cli stand-in for WHMCS around the nPanel server module: it defines WHMCS, stubs
 * logModuleCall (recording every call and checking it leaks no secret) and
 * WHMCS\Database\Capsule (stubs/Capsule.php: an in-memory database recording writes), then
 * loads the module. run.php drives it against a real nPanel server.
 */

define('WHMCS', true);

require_once __DIR__ . '/stubs/Capsule.php';

use WHMCS\Database\FakeDb;

class HarnessFailure extends \Exception
{
}

class Harness
{
    /** @var array every logModuleCall: module, action, request, response, processed, replace, masked */
    public static $logs = [];
    /** @var string[] values that must never appear in a recorded log entry after masking */
    public static $sensitive = [];
    /** @var string[] values that must not appear in the request data even before masking (the secrets) */
    public static $secrets = [];
    /** @var string[] leaks found by logModuleCall (checked after every module call) */
    public static $violations = [];
    /** @var int checks passed */
    public static $passed = 0;

    /** A value and the forms it takes inside JSON (a request body is logged as the JSON sent). */
    public static function forms($v)
    {
        $out = [(string) $v];
        foreach ([0, JSON_UNESCAPED_SLASHES, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE] as $flags) {
            $out[] = substr(json_encode((string) $v, $flags), 1, -1);
        }
        return array_values(array_unique($out));
    }

    public static function sensitive(...$values)
    {
        foreach ($values as $v) {
            if ((string) $v !== '') {
                self::$sensitive = array_merge(self::$sensitive, self::forms($v));
            }
        }
    }

    public static function secret(...$values)
    {
        foreach ($values as $v) {
            if ((string) $v !== '') {
                self::$secrets = array_merge(self::$secrets, self::forms($v));
                self::$sensitive = array_merge(self::$sensitive, self::forms($v));
            }
        }
    }

    /** What WHMCS writes to its module log: arrays printed, replace-vars masked. */
    public static function stringify($v)
    {
        if (is_array($v) || is_object($v)) {
            return print_r($v, true);
        }
        return (string) $v;
    }

    public static function record($module, $action, $request, $response, $processed, $replace)
    {
        $replace = is_array($replace) ? $replace : [];
        $mask = function ($v) use ($replace) {
            $s = Harness::stringify($v);
            foreach ($replace as $r) {
                if ((string) $r !== '') {
                    $s = str_replace((string) $r, '********', $s);
                }
            }
            return $s;
        };
        $entry = [
            'module' => $module,
            'action' => $action,
            'request' => $request,
            'response' => $response,
            'processed' => $processed,
            'replace' => $replace,
            'masked' => [$mask($request), $mask($response), $mask($processed)],
        ];
        self::$logs[] = $entry;
        if ($module !== 'npanel') {
            self::$violations[] = "logModuleCall names module '{$module}', not 'npanel'";
        }
        $rawRequest = self::stringify($request);
        foreach (self::$secrets as $s) {
            if (strpos($rawRequest, $s) !== false) {
                self::$violations[] = "{$action}: the API secret is in the request data given to logModuleCall";
            }
        }
        foreach (self::$sensitive as $s) {
            foreach ($entry['masked'] as $i => $text) {
                if (strpos($text, $s) !== false) {
                    $what = ['request', 'response', 'processed data'][$i];
                    self::$violations[] = "{$action}: a secret or password is in the logged {$what} after masking (it is not in the replace-vars argument)";
                }
            }
        }
    }

    public static function check($cond, $message)
    {
        if (!$cond) {
            throw new HarnessFailure($message);
        }
    }

    /**
     * Call module function npanel_<name>($params): checks it logged (unless it is MetaData or
     * ConfigOptions), that no log entry leaked a secret, and returns its result.
     */
    public static function call($name, array $params = [])
    {
        $fn = 'npanel_' . $name;
        self::check(function_exists($fn), "the module has no {$fn}()");
        $before = count(self::$logs);
        $out = in_array($name, ['MetaData', 'ConfigOptions'], true) ? $fn() : $fn($params);
        if (!in_array($name, ['MetaData', 'ConfigOptions'], true)) {
            self::check(count(self::$logs) > $before, "{$fn}() did not call logModuleCall");
            foreach (array_slice(self::$logs, $before) as $e) {
                self::check(strpos($e['action'], $fn) === 0, "{$fn}() logged under the action name '{$e['action']}'");
            }
        }
        self::check(!self::$violations, implode('; ', self::$violations));
        return $out;
    }

    /** The last log entry of npanel_<name>. */
    public static function lastLog($name)
    {
        for ($i = count(self::$logs) - 1; $i >= 0; $i--) {
            if (self::$logs[$i]['action'] === 'npanel_' . $name) {
                return self::$logs[$i];
            }
        }
        return null;
    }

    public static function ok($what)
    {
        self::$passed++;
        echo 'ok ' . self::$passed . ' - ' . $what . "\n";
    }

    /** Writes recorded by the Capsule stub since write number $from. */
    public static function writes($from = 0)
    {
        return array_slice(FakeDb::$writes, $from);
    }
}

/** The stubbed WHMCS logger: logModuleCall($module, $action, $request, $response, $processed, $replaceVars). */
function logModuleCall($module, $action, $requestString, $responseData, $processedData = '', $replaceVars = [])
{
    Harness::record($module, $action, $requestString, $responseData, $processedData, $replaceVars);
}

require_once __DIR__ . '/../modules/servers/npanel/npanel.php';
